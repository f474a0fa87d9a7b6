"""The whole method end to end: world -> five methods -> evaluation -> report."""
