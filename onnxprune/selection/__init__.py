"""Selection: from scores and a budget (ratio, MACs, parameters, latency) to a plan of kept units."""
