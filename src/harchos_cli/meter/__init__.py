"""Energy, emissions and cost: the samples a hub's meter records, and the ledger built from them."""
