"""The CLI's commands, one module per family; `surgery.cli` registers them on the group."""
