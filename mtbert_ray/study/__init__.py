"""Studies: the sweep on Ray Tune, its dry run and record, the analysis (tables, plots, paired intervals), results archives and upload."""
