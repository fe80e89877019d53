"""hopscope.probes"""
