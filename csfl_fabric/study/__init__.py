"""Study tools: compare methods over seeds, read the runs back, report (statistics, plots, markdown)."""
