"""The whole method end to end: world -> six methods -> evaluation -> report."""
