"""hopscope.correlate"""
