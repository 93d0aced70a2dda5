"""Ray: Train sessions and workers, the teacher-cache actor pool, Ray Data readers, starting or joining Ray, what a
trial asks Ray for, and every private Ray API in one module.
"""
