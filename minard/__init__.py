"""minard, the online monitoring system of the SNO+ detector."""
