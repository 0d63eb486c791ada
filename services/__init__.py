"""tradebus services: one OS process per concern (see DESIGN.md)."""
import sys

# httpx imports its command-line client (rich's syntax highlighting, every pygments lexer) when
# those packages are installed, as they are here: about 5 MB per engine process for a CLI no
# process runs. A ``None`` entry makes that import fail, which httpx handles (``httpx.main``
# then only prints that the CLI is unavailable). Every engine process starts in this package.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
