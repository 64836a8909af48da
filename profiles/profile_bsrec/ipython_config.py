# IPython configuration for `bsrec session` (which runs a copy of this profile from its
# state folder, so IPython's history and logs never land in the repository).
c = get_config()  # noqa: F821 - provided by IPython when it loads this file
c.TerminalIPythonApp.display_banner = False
c.InteractiveShellApp.matplotlib = None
c.TerminalInteractiveShell.confirm_exit = False
