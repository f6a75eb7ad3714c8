"""The operator's tools: the CLI, the board, the reports and the diagrams. They read the engine through
its queries (``fsm.reader``) and use the daemon (``fsm.runtime``) and the harness (``fsm.harness``);
nothing below imports them."""
