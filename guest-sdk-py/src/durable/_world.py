"""The component's exports, wired to the SDK.

Imported only inside a component build (``wit_world`` is generated there by
componentize-py); the entry module ``durable-build`` writes re-exports
``WitWorld`` from here after importing the author's module.
"""

import wit_world

from . import _sdk


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        return _sdk._run(input)

    def run_branch(self, entry: str, step, input: str) -> str:
        return _sdk._run_branch(entry, step, input)
