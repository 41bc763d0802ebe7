"""The web page served at `/ui`: jobs with their curves and logs, models with a chat box, and
datasets with their rows and pre-flight report.

Pages are rendered (`pages.py`, Jinja templates in `templates/`) from the same API methods a client
calls, through the route table and as the caller, so owners apply as they do to the API. The
scripts in `static/` (uPlot, vendored, draws the curves) follow a job's event stream and talk to
the JSON API; the Content-Security-Policy allows no script from anywhere else.
"""

from llama_post.ui.pages import ui_routes

__all__ = ["ui_routes"]
