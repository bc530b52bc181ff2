"""The paper's experiment (``conscience eval experiment``): its arms, the run and the report."""
