"""hopscope.api"""
