"""The `usagebill` sub-commands, one module per area, each adding its commands to the main app."""
