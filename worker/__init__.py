"""usagebill's worker side: rq job functions, the worker entry and the `usagebill` CLI."""
