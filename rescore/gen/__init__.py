"""Generation: backends behind one Protocol, the model loader, and the runner that fills the store."""
