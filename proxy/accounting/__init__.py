"""Accounting: spend and daily budgets, the response cache, the usage log and `report`."""
