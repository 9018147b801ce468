"""Models, data sets and the shared experiment harness for projprune's experiments."""
