"""hopscope.lab"""
