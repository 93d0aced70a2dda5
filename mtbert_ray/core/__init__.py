"""The MT-BERT core in torch + transformers alone: losses, objective, teacher targets, collation, the steps and the
epoch loop. Nothing here knows about stages, Ray or export (a test walks the imports).
"""
