"""iPET (Schick and Schütze, 2021) and its two variants of the SMASH paper's Tables 3 and 5."""
