"""Carbon signals: regions, providers, the embedded forecaster and window search."""
