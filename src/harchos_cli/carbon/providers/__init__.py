"""Carbon data providers: live API clients, the embedded model and trace replay."""
