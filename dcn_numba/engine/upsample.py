"""Bilinear upsampling of feature maps, as a Function: the last layer of a fully convolutional
segmentation net, which brings its class scores from the feature map's stride back to the image.

Pixel centres are aligned (the convention called align_corners=False): output row i, whose centre
is at i + 0.5, reads the input at row coordinate

    y_i = clamp((i + 0.5) · H / H_out − 0.5,  0,  H − 1)

by linear interpolation between rows ⌊y_i⌋ and ⌊y_i⌋ + 1, with weights 1 − (y_i − ⌊y_i⌋) and
y_i − ⌊y_i⌋, and likewise along columns. (`dcn_numba.data.canvases.resize` resamples images by
the same rule; a test holds the two equal.) Along one axis this is a matrix A (H_out, H) with at
most two non-zero weights per row, summing to 1 (`bilinear_matrix`), so for every (b, c)

    out[b, c] = A_h · x[b, c] · A_wᵀ,     ∂L/∂x[b, c] = A_hᵀ · g[b, c] · A_w

with g = ∂L/∂out: a separable linear map, whose backward is its transpose.
"""

from dcn_numba.engine.windows import SeparableMap


def bilinear_matrix(xp, size, output_size, dtype):
    """The (output_size, size) matrix A of bilinear resampling along one axis (module docstring):
    row i holds the weights of input cells ⌊y_i⌋ and ⌊y_i⌋ + 1 (clamped into the axis)."""
    position = ((xp.arange(output_size) + 0.5) * size / output_size - 0.5).clip(0, size - 1)
    low = xp.floor(position).astype(int)
    high = xp.minimum(low + 1, size - 1)
    fraction = position - low
    rows = xp.arange(output_size)
    matrix = xp.zeros((output_size, size), dtype=dtype)
    matrix[rows, low] += 1 - fraction
    matrix[rows, high] += fraction  # where high = low (the clamped edge), fraction is 0
    return matrix


class UpsampleBilinear(SeparableMap):
    """Bilinear resampling of x (B, C, H, W) to (B, C, H_out, W_out): the separable map of the
    bilinear matrices, out = A_h x A_wᵀ, ∂L/∂x = A_hᵀ g A_w (module docstring)."""

    name = "upsample_bilinear"
    matrix = staticmethod(bilinear_matrix)


def upsample_bilinear(x, output_size):
    """x (B, C, H, W) resampled bilinearly to output_size (H_out, W_out), pixel centres aligned."""
    return UpsampleBilinear.apply(x, output_size=output_size)
