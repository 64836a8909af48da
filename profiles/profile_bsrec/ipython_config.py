# IPython configuration for `bsrec session`.
c = get_config()  # noqa: F821 - provided by IPython when it loads this file
c.TerminalIPythonApp.display_banner = False
c.InteractiveShellApp.matplotlib = None
c.TerminalInteractiveShell.confirm_exit = False
