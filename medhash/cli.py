"""The ``medhash`` command: one sub-command per service, worker and tool.

Every sub-command reads its configuration from the ``MEDHASH_*`` settings; options on the
command line only override what a single invocation needs.
"""

from __future__ import annotations

import typer

from medhash.commands import demo, learning, privacy, send, services, status

app = typer.Typer(
    name="medhash",
    help="Content-based medical image retrieval by deep hashing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
services.register(app)
app.command()(send.send)
app.command()(status.status)
app.command()(status.settings)
app.command()(demo.demo)
app.command()(learning.train)
app.command()(learning.evaluate)
app.command()(privacy.forget)
app.command()(privacy.audit)

if __name__ == "__main__":
    app()
