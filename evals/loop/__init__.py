"""The online loop on the default stack (``conscience eval loop``): its configuration, data,
nights, phases, the stack it runs, blind scoring, the start pairs and the report."""
