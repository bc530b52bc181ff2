"""The verdict benchmark (``conscience eval verdicts``): the judge on labelled sets, its metrics
as a guard model's, and the screen's report."""
