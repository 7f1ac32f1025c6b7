"""The scalar mathematics of DCNv3 and DCNv4 (docs/specification.md §3), shared by the CPU and CUDA
kernels of `dcnv3`: where a tap samples, and how taps, samples, pixels and channels are numbered.
The bilinear sample and its derivatives are §1's (`bilinear`): a DCNv3 sample is a §1 sample at
another location, on the same zero-padded channels-last image, so the kernels call those
functions directly.

Every array is flat and C-contiguous inside a kernel:

    padded      (N, H + 2, W + 2, C)        the input zero-padded by one pixel, channels last
    offset      (N, H_out, W_out, G, P, 2)  the pair of sample s at 2s (Δx) and 2s + 1 (Δy)
    mask        (N, H_out, W_out, G, P)     m of sample s at s
    output      (N, H_out, W_out, C)

where sample s = (position·G + g)·P + p numbers tap p of group g at output position
position = (n·H_out + h)·W_out + w, and channel c = g·D + d of a pixel lies at pixel·C + c.
"""

from typing import NamedTuple

from dcn_numba.kernels._targets import shared
from dcn_numba.kernels.bilinear import dcn_locate, padded_corner
from dcn_numba.reference.dcnv3 import Parameters


# Every size and parameter a kernel needs, passed to kernels as one tuple: the sizes of a call, its
# number of taps P = kernel_h·kernel_w − remove_center, then the operator's parameters as the
# reference names them (reference.dcnv3.Parameters, in the published order; offset_scale is the
# only real number), so that the parameters are defined once for the reference and the kernels.
DCNv3Geometry = NamedTuple("DCNv3Geometry", [("N", int), ("H", int), ("W", int), ("C", int), ("H_out", int),
                                             ("W_out", int), ("taps", int), *Parameters.__annotations__.items()])


@shared
def dcnv3_kernel_centre(kernel, dilation):
    """c = floor(dil·(k − 1) / 2): the kernel's centre, in pixels from its first tap."""
    return (dilation * (kernel - 1)) // 2


@shared
def dcnv3_location(out, stride, pad, kernel, dilation, tap, delta, offset_scale):
    """One coordinate of a sample (§3.3): p = p0 − c·s + (tap·dil + Δ)·s, where
    p0 = c − pad + out·stride is the input point under the kernel's centre and s = offset_scale
    scales the kernel's grid as well as the offset Δ."""
    centre = dcnv3_kernel_centre(kernel, dilation)
    p0 = centre - pad + out * stride
    return p0 - centre * offset_scale + (tap * dilation + delta) * offset_scale


@shared
def dcnv3_tap(p, geometry):
    """(i_x, i_y) of tap p: taps are numbered column-major, p = i_x·kh + i_y, and without the
    centre (kw // 2, kh // 2) when remove_center, the taps after it one lower (§3.2)."""
    number = p
    centre = (geometry.kernel_w // 2) * geometry.kernel_h + geometry.kernel_h // 2
    if geometry.remove_center and p >= centre:
        number = p + 1
    return number // geometry.kernel_h, number % geometry.kernel_h


@shared
def dcnv3_sample_number(position, g, p, geometry):
    """s = (position·G + g)·P + p: tap p of group g at output position (n·H_out + h)·W_out + w."""
    return (position * geometry.group + g) * geometry.taps + p


@shared
def dcnv3_padded_image(n, geometry):
    """Flat index of image n's first value in the padded input (N, H + 2, W + 2, C)."""
    return n * (geometry.H + 2) * (geometry.W + 2) * geometry.C


@shared
def dcnv3_output_coordinates(position, geometry):
    """(h, w) of output position (n·H_out + h)·W_out + w."""
    return position // geometry.W_out % geometry.H_out, position % geometry.W_out


@shared
def dcnv3_sample_location(offset, sample, h, w, i_x, i_y, geometry):
    """(p_y, p_x) of sample s, tap (i_x, i_y) at output (h, w) (§3.3), its offset read x first.
    Locations are computed in float64 whatever the data's type."""
    p_x = dcnv3_location(w, geometry.stride_w, geometry.pad_w, geometry.kernel_w, geometry.dilation_w,
                         i_x, offset[2 * sample], geometry.offset_scale)
    p_y = dcnv3_location(h, geometry.stride_h, geometry.pad_h, geometry.kernel_h, geometry.dilation_h,
                         i_y, offset[2 * sample + 1], geometry.offset_scale)
    return p_y, p_x


@shared
def in_data_type(data, value):
    """`value` in the dtype of the array `data`. Locations are float64, but a float32 call's
    interpolation weights l_y, l_x are rounded to float32, so that its per-channel arithmetic stays
    in float32 (float64 weights would promote every product and halve the width of the CPU's
    vector loops), as the deformable convolution's located tables do."""
    return data.dtype.type(value)


@shared
def dcnv3_locate(padded, p_y, p_x, geometry):
    """(top_left, l_y, l_x) of a sample at (p_y, p_x), located on the padded image
    (`bilinear.dcn_locate`), the weights l_y and l_x in the dtype of `padded` (`in_data_type`)."""
    top_left, l_y, l_x = dcn_locate(p_y, p_x, geometry.H, geometry.W)
    return top_left, in_data_type(padded, l_y), in_data_type(padded, l_x)


@shared
def dcnv3_locate_sample(padded, offset, sample, h, w, i_x, i_y, geometry):
    """(top_left, l_y, l_x) of sample s, tap (i_x, i_y) at output (h, w): its location (§3.3,
    `dcnv3_sample_location`), located (`dcnv3_locate`). Every DCNv3 kernel finds its samples so;
    the CPU kernels take the two steps in two passes over a row of samples, each a loop that
    vectorises (`kernels.dcnv3.locate_row`)."""
    p_y, p_x = dcnv3_sample_location(offset, sample, h, w, i_x, i_y, geometry)
    return dcnv3_locate(padded, p_y, p_x, geometry)


@shared
def dcnv3_corner_index(image, top_left, corner, c, geometry):
    """Flat index, in the padded input's gradient, of channel c of corner 0..3 (y0|y0+1, x0|x0+1) of
    a sample located at top_left (`bilinear.dcn_locate`) on the image starting at `image`."""
    return image + padded_corner(top_left, geometry.W, corner) * geometry.C + c


@shared
def dcnv3_store_sample_gradient(grad_offset, grad_mask, sample, total_y, total_x, total_m, geometry):
    """Store sample s's gradients: grad_offset = offset_scale · (Σ m·go·∂S/∂p_x, Σ m·go·∂S/∂p_y),
    x first (∂p/∂Δ = offset_scale), and grad_mask = Σ go·S."""
    grad_offset[2 * sample] = geometry.offset_scale * total_x
    grad_offset[2 * sample + 1] = geometry.offset_scale * total_y
    grad_mask[sample] = total_m
