"""Procedural neonatal brain anatomy: drawem9 labels and fine tissue classes on a voxel grid.

A brain is drawn in *template* millimetres (a 40-week brain, origin at the cerebrum centre, x
left->right, y posterior->anterior, z inferior->superior; bilateral structures are given for the
right side and mirrored) and mapped to the scanner grid by age-dependent growth, the subject's
smooth random deformation and asymmetry, and the session's small head pose. Label geometry comes
from approximate signed distances in millimetres, so a subject looks the same at any grid.

The cortex is a ribbon of constant thickness around everything that is "outside" the cerebral
tissue: the hull, the interhemispheric and Sylvian fissures, the basal cisterns and the sulci.
Sulci are the zero lines of smooth random fields on the hull (``|S| / |grad S|`` is the distance
to them); their depth grows with age, so preterm brains are smooth and term brains folded.

Two anatomies: ``v1``, the first generator, frozen byte for byte (the cohort of the committed
experiment report), and ``v2`` (the default), which adds anatomy that real scans have and the
first one lacked: deep grey nuclei split by the internal capsule (caudate head and body along the lateral
ventricle, the lentiform nucleus with its pallidum lateral to the capsule, the thalamus medial and
posterior to it); named primary sulci (central, superior frontal, intraparietal, superior temporal,
calcarine, parieto-occipital, cingulate) that appear at their usual ages, below random secondary
and tertiary folds, with an individual timing of gyrification and CSF in the sulci (partial
volume where a cleft is thinner than a voxel); and a cerebellum of two hemispheres and a vermis
whose lobules, of varying depth and subdivided towards term, have a cortex around a white-matter
core.

The modules: :mod:`.tissues` (drawem9 labels and the tissue classes), :mod:`.subject` (growth with
age, the subject's anatomy, the session's pose), :mod:`.cortex` (hull, fissures, cisterns, sulci),
:mod:`.deep` (deep grey nuclei, hippocampi, ventricles), :mod:`.cerebellum` (cerebellum and its
fissures) and :mod:`.brain` (one session on a voxel grid, drawn slab by slab).
"""
