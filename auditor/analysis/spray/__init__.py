"""SpRAy (Lapuschkin et al. 2019): clusters of explanations and the subgroups they reveal.

* :mod:`auditor.analysis.spray.clusters`: spectral clustering of pooled maps (numpy, no torch);
* :mod:`auditor.analysis.spray.subgroups`: each cluster tested against the rest of its class.
"""
