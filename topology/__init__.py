"""hopscope.topology"""
