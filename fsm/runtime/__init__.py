"""The daemon a trader runs: configuration, the event loop and its storage, the journal, alerts,
heartbeat and the ledger. It never imports the harness (``fsm.harness``), the operator's tools
(``fsm.ops``) nor the simulator (``binance.sim``)."""
