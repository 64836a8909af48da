# IPython configuration for `bsrec session`.
import os

c = get_config()  # noqa: F821 - provided by IPython when it loads this file
c.TerminalIPythonApp.display_banner = False
c.InteractiveShellApp.matplotlib = None
c.TerminalInteractiveShell.confirm_exit = False
# Command history goes to the session's state folder, never into this repository.
_state = os.environ.get("BSREC_SESSION_STATE_DIR") or os.environ.get("BSREC_STATE_DIR", "~/.bsrec")
_state = os.path.expanduser(_state)
os.makedirs(_state, exist_ok=True)
c.HistoryManager.hist_file = os.path.join(_state, "ipython-history.sqlite")
