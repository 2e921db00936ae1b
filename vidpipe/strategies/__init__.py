"""How work maps onto ranks. Strategies drive any `DiffusionModel`; they never know which model they run."""
