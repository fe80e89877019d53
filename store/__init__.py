"""hopscope.store"""
