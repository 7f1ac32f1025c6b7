"""Where the deformable convolution's kernels keep things: the sizes of a call
(`DeformConvGeometry`) and the flat index of every value of its buffers, each with its inverse
where a GPU thread starts from an index.

Every array is flat and C-contiguous inside a kernel; b counts the images of the chunk a kernel
is given:

    padded      (B, H + 2, W + 2, C_in)     the input zero-padded by one pixel, channels last
    tables      (B, H_out·W_out, G_off, K)  top_left, l_y, l_x: where each sample falls
    col, gcol   (B, G, H_out·W_out, K, C_in/G)  the column buffer and ∂L/∂col; a CPU tile holds
                the (G, positions, K, C_in/G) part of col of one image
    offset      (B, 2·G_off·K, H_out, W_out),  mask (B, G_off·K, H_out, W_out)

Why channels last: every channel of an offset group shares a sample's corners and weights, so
with the channels of a pixel side by side the innermost loops stream contiguous channels through
fixed weights (vector loads on the CPU, coalesced loads on a GPU). The channels of one weight
group and one offset group form runs of `channel_run` = gcd(C_in/G, C_in/G_off) consecutive
channels, the innermost loops' length.
"""

from typing import NamedTuple

from dcn_numba.kernels._targets import geometry_of, shared


class DeformConvGeometry(NamedTuple):
    """Every size a kernel needs, passed to kernels as one tuple of integers."""

    C_in: int
    H: int
    W: int
    offset_groups: int
    kh: int
    kw: int
    H_out: int
    W_out: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int
    channel_run: int  # gcd(C_in/G, C_in/G_off): consecutive channels of one weight and one offset group


GEOMETRY = geometry_of(DeformConvGeometry)  # the geometry's argument kind in the CUDA kernels' declarations


@shared
def dcn_table_index(b, position, g, k, geometry):
    """Index of sample (b, g, k) at output position = i·W_out + j in the located tables, laid out
    (B, H_out·W_out, G_off, K): the samples of one output position side by side."""
    return ((b * geometry.H_out * geometry.W_out + position) * geometry.offset_groups + g) \
        * geometry.kh * geometry.kw + k


@shared
def dcn_table_coordinates(here, geometry):
    """(b, position, g, k) of entry `here` of the located tables, the inverse of `dcn_table_index`."""
    K = geometry.kh * geometry.kw
    k = here % K
    g = here // K % geometry.offset_groups
    position = here // (K * geometry.offset_groups) % (geometry.H_out * geometry.W_out)
    b = here // (K * geometry.offset_groups * geometry.H_out * geometry.W_out)
    return b, position, g, k


@shared
def dcn_column_index(b, group, position, k, channel_in_group, positions, geometry):
    """Index of col[b, group, position, k, c'] in a column buffer (B, G, positions, K, C_in/G):
    for each weight group, one row per output position holding its K taps × C_in/G channels
    (channel c = group·C_in/G + c'), so that out[b, group] = weight_group · rowsᵀ. positions is
    H_out·W_out for whole images (a GPU chunk), or a CPU tile's count (b = 0, position counted
    from the tile's first)."""
    channels_per_group = geometry.C_in // geometry.groups
    return (((b * geometry.groups + group) * positions + position)
            * geometry.kh * geometry.kw + k) * channels_per_group + channel_in_group


@shared
def dcn_column_coordinates(index, geometry):
    """(b, group, position, k, c', c, g) of col element `index`, the inverse of `dcn_column_index`:
    image, weight group, output position, tap, channel within the group, channel, offset group."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.groups
    channel_in_group = index % channels_per_group
    k = index // channels_per_group % K
    position = index // (channels_per_group * K) % HW_out
    group = index // (channels_per_group * K * HW_out) % geometry.groups
    b = index // (channels_per_group * K * HW_out * geometry.groups)
    c = group * channels_per_group + channel_in_group
    return b, group, position, k, channel_in_group, c, c // (geometry.C_in // geometry.offset_groups)


@shared
def dcn_padded_image(b, geometry):
    """Flat index of image b's first value in the channels-last padded input (B, H+2, W+2, C_in)."""
    return b * (geometry.H + 2) * (geometry.W + 2) * geometry.C_in


@shared
def dcn_padded_pixel(y, x, W):
    """Flat index, within a padded (H+2)×(W+2) image, of input pixel (y, x)."""
    return (y + 1) * (W + 2) + x + 1
