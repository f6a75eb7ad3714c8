"""The harness: the scenario runner, the replays, the fault and crash matrices, the benchmarks and the
backtest. It drives the engine and the daemon (``fsm.runtime``) against simulated venues; the daemon
never imports it, and it never imports the operator's tools (``fsm.ops``)."""
