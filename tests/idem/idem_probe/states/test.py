"""
The test states of older idem releases that idem 25 no longer ships.
"""
from typing import Any


async def nop(hub, ctx, name: str, **kwargs) -> dict[str, Any]:
    """Succeed and change nothing."""
    return {"name": name, "result": True, "changes": {}, "comment": ("Success!",)}


async def succeed_with_changes(hub, ctx, name: str, **kwargs) -> dict[str, Any]:
    """Succeed with a change."""
    return {
        "name": name,
        "result": True,
        "changes": {"testing": {"old": "Unchanged", "new": "Something pretended to change"}},
        "comment": ("Success!",),
    }
