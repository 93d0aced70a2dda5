"""mtbert-ray: multi-teacher knowledge distillation (MT-BERT, Wu, Wu & Huang 2021) on Ray."""
__version__ = "0.1.0"
