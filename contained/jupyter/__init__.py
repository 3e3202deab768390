"""The notebook side: the `%%container` magics, widgets, plots and the kernelspec. Notebook 06.
Nothing below this package imports IPython.
"""
