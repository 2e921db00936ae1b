"""Sample schedulers: how samples flow over the groups of a plan (pp: stage to stage; dp: whole samples per
group). They drive any `DiffusionModel`, never know which model they run, and see groups, not ranks."""
