/* Crop decoding and box resizing of JPEG images for the host input pipeline (jpeg_crop.py).

effcv_jpeg_info            the image's size and whether it decodes to RGB here (header only).
effcv_jpeg_crop_resize     decodes only the rows and columns of a box (plus the resampling
                           filter's margin) at a DCT scale of num/8, then resizes the box to
                           out_h x out_w RGB with `effcv_resize_bicubic` (mirrored left to right
                           when `flip` is set).
effcv_resize_bicubic       Pillow's antialiased bicubic resize of a fractional box of a uint8
                           (h, w, c) image: Keys' cubic with a = -0.5 on pixel centres, its
                           support widened by the reduction factor, weights normalised, the
                           intermediate rounded and clipped: within two levels of Pillow's
                           (each pass rounds) except where the first pass overshoots 0..255
                           (see the function).

libjpeg-turbo's jpeg_skip_scanlines and jpeg_crop_scanline do the partial decoding (what
tf.image.decode_and_crop_jpeg uses): rows above the box are entropy-decoded but not
transformed, rows below it are not read, columns outside it (widened to whole iMCUs) are not
transformed. Return codes: 0 done, 1 the data is no JPEG libjpeg reads or ends early (`message`
says why), 2 a colour space this path does not convert (CMYK, YCCK: the caller falls back). */

#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#define MESSAGE_SIZE 200

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  int ended_early;
} ErrorManager;

static void on_error(j_common_ptr cinfo) {
  ErrorManager* errors = (ErrorManager*)cinfo->err;
  (*cinfo->err->format_message)(cinfo, errors->message);
  longjmp(errors->jump, 1);
}

/* Warnings (level -1) are kept going, as Pillow and TF do for "extraneous bytes" and other
   recoverable damage, except a premature end of the data, which is an error. */
static void on_message(j_common_ptr cinfo, int level) {
  ErrorManager* errors = (ErrorManager*)cinfo->err;
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    errors->ended_early = 1;
    (*cinfo->err->format_message)(cinfo, errors->message);
  }
}

/* Points `cinfo` at `errors` (created before jpeg_create_decompress). */
static void use_errors(struct jpeg_decompress_struct* cinfo, ErrorManager* errors) {
  cinfo->err = jpeg_std_error(&errors->pub);
  errors->pub.error_exit = on_error;
  errors->pub.emit_message = on_message;
  errors->ended_early = 0;
}

static void copy_message(char* message, const char* text) {
  snprintf(message, MESSAGE_SIZE, "%s", text);
}

static int converts_to_rgb(J_COLOR_SPACE space) {
  return space == JCS_GRAYSCALE || space == JCS_RGB || space == JCS_YCbCr;
}

int effcv_jpeg_info(const uint8_t* data, unsigned long size, int* width, int* height,
                    int* decodes_to_rgb, char* message) {
  struct jpeg_decompress_struct cinfo;
  ErrorManager errors;
  use_errors(&cinfo, &errors);
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    copy_message(message, errors.message);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  *width = (int)cinfo.image_width;
  *height = (int)cinfo.image_height;
  *decodes_to_rgb = converts_to_rgb(cinfo.jpeg_color_space);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

/* ---- resizing ---------------------------------------------------------------------------- */

static double bicubic(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

/* For each of `out_size` outputs over [in0, in1) of an axis of `in_size` pixels: the first
   input pixel `first[i]`, the tap count `count[i]` and `max_taps` normalised weights at
   weights[i * max_taps]. Returns max_taps, or 0 when memory ran out. */
static int axis_weights(double in0, double in1, int in_size, int out_size, int** first,
                        int** count, float** weights) {
  const double scale = (in1 - in0) / out_size;
  const double filter_scale = scale > 1.0 ? scale : 1.0;
  const double support = 2.0 * filter_scale;
  const int max_taps = (int)ceil(support) * 2 + 1;
  *first = malloc(sizeof(int) * out_size);
  *count = malloc(sizeof(int) * out_size);
  *weights = malloc(sizeof(float) * (size_t)out_size * max_taps);
  if (!*first || !*count || !*weights) return 0;
  for (int i = 0; i < out_size; i++) {
    const double center = in0 + (i + 0.5) * scale;
    int lo = (int)(center - support + 0.5);
    int hi = (int)(center + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in_size) hi = in_size;
    float* taps = *weights + (size_t)i * max_taps;
    double total = 0.0;
    const int n = hi - lo < 0 ? 0 : (hi - lo < max_taps ? hi - lo : max_taps);
    for (int k = 0; k < max_taps; k++) {
      taps[k] = k < n ? (float)bicubic((k + lo - center + 0.5) / filter_scale) : 0.0f;
      total += taps[k];
    }
    if (total != 0.0)
      for (int k = 0; k < n; k++) taps[k] = (float)(taps[k] / total);
    (*first)[i] = lo;
    (*count)[i] = n;
  }
  return max_taps;
}

/* Rounded to a whole level and clipped to 0..255 (branch-free: loops of it vectorise). */
static inline float clip_round(float value) {
  value = rintf(value);
  value = value > 0.0f ? value : 0.0f;
  return value < 255.0f ? value : 255.0f;
}

static inline uint8_t to_uint8(float value) {
  value = value < 0.0f ? 0.0f : (value > 255.0f ? 255.0f : value);
  return (uint8_t)(value + 0.5f);
}

/* The resampling of one axis: `count` taps from `first` with `taps`-strided weights. */
typedef struct {
  int* first;
  int* count;
  float* weights;
  int taps;
} Axis;

static void free_axis(Axis* axis) {
  free(axis->first);
  free(axis->count);
  free(axis->weights);
}

/* Rows [row_lo, row_hi) of `source` (row stride `stride` elements, `channels` per pixel)
   resampled along x into `out` (row_hi - row_lo rows of out_w pixels) through `store`.
   BLOCK rows at a time are transposed into `tile` (columns col_lo.. of x's taps, each column
   BLOCK x channels contiguous floats), so each tap is one contiguous multiply-add that
   vectorises, as the vertical pass's. */
#define BLOCK 16
#define HORIZONTAL_PASS(name, type, out_type, store)                                      \
  static void name(const type* source, size_t stride, int row_lo, int row_hi, int channels, \
                   const Axis* x, int col_lo, int col_hi, int out_w, float* tile,           \
                   out_type* out) {                                                        \
    const int column = BLOCK * channels;                                                   \
    for (int y0 = row_lo; y0 < row_hi; y0 += BLOCK) {                                      \
      const int rows = row_hi - y0 < BLOCK ? row_hi - y0 : BLOCK;                          \
      for (int r = 0; r < rows; r++) {                                                     \
        const type* pixels = source + (size_t)(y0 + r) * stride;                           \
        for (int i = col_lo; i < col_hi; i++)                                              \
          for (int c = 0; c < channels; c++)                                               \
            tile[(size_t)(i - col_lo) * column + r * channels + c] = pixels[i * channels + c]; \
      }                                                                                    \
      float total[BLOCK * 4];                                                              \
      for (int i = 0; i < out_w; i++) {                                                    \
        const float* w = x->weights + (size_t)i * x->taps;                                 \
        const float* taps = tile + (size_t)(x->first[i] - col_lo) * column;                \
        for (int j = 0; j < column; j++) total[j] = 0.0f;                                  \
        for (int k = 0; k < x->count[i]; k++) {                                            \
          const float weight = w[k];                                                       \
          const float* values = taps + (size_t)k * column;                                 \
          for (int j = 0; j < column; j++) total[j] += weight * values[j];                 \
        }                                                                                  \
        for (int r = 0; r < rows; r++)                                                     \
          for (int c = 0; c < channels; c++)                                               \
            out[((size_t)(y0 - row_lo + r) * out_w + i) * channels + c] =                  \
                store(total[r * channels + c]);                                            \
      }                                                                                    \
    }                                                                                      \
  }
HORIZONTAL_PASS(horizontal_u8_to_f32, uint8_t, float, clip_round)
HORIZONTAL_PASS(horizontal_f32_to_u8, float, uint8_t, to_uint8)

/* Output rows [0, out_h) resampled along y from `source` rows (row stride `stride`
   elements, `first[i] - row_lo` the first row output i reads), `span` elements per row from
   column element `offset`; into `out` (span per row) through `store` (rounding it). */
#define VERTICAL_PASS(name, type, out_type, store)                                        \
  static void name(const type* source, size_t stride, size_t offset, int row_lo,           \
                   const Axis* y, int out_h, int span, float* line, out_type* out) {       \
    for (int i = 0; i < out_h; i++) {                                                      \
      const float* w = y->weights + (size_t)i * y->taps;                                   \
      const type* first = source + (size_t)(y->first[i] - row_lo) * stride + offset;       \
      for (int j = 0; j < span; j++) line[j] = 0.0f;                                       \
      for (int k = 0; k < y->count[i]; k++) {                                              \
        const float weight = w[k];                                                         \
        const type* row = first + (size_t)k * stride;                                      \
        for (int j = 0; j < span; j++) line[j] += weight * row[j];                         \
      }                                                                                    \
      out_type* out_row = out + (size_t)i * span;                                          \
      for (int j = 0; j < span; j++) out_row[j] = store(line[j]);                          \
    }                                                                                      \
  }
VERTICAL_PASS(vertical_u8_to_f32, uint8_t, float, clip_round)
VERTICAL_PASS(vertical_f32_to_u8, float, uint8_t, to_uint8)

/* Output i of `axis` takes output (size - 1 - i)'s taps: the axis mirrored, at no cost. */
static void mirror(Axis* axis, int size) {
  for (int a = 0, b = size - 1; a < b; a++, b--) {
    int swap = axis->first[a];
    axis->first[a] = axis->first[b];
    axis->first[b] = swap;
    swap = axis->count[a];
    axis->count[a] = axis->count[b];
    axis->count[b] = swap;
    for (int k = 0; k < axis->taps; k++) {
      const float weight = axis->weights[(size_t)a * axis->taps + k];
      axis->weights[(size_t)a * axis->taps + k] = axis->weights[(size_t)b * axis->taps + k];
      axis->weights[(size_t)b * axis->taps + k] = weight;
    }
  }
}

/* effcv_resize_bicubic, mirrored left to right when `flip` is set. */
static int resize_bicubic(const uint8_t* source, int height, int width, int channels,
                          double x0, double y0, double x1, double y1, int out_h, int out_w,
                          int flip, uint8_t* out) {
  Axis x = {0}, y = {0};
  float *between = NULL, *line = NULL, *tile = NULL;
  int status = 1;
  x.taps = axis_weights(x0, x1, width, out_w, &x.first, &x.count, &x.weights);
  y.taps = axis_weights(y0, y1, height, out_h, &y.first, &y.count, &y.weights);
  if (!x.taps || !y.taps) goto done;
  /* Two passes, the intermediate rounded and clipped to 0..255 as Pillow's 8-bit one; the
     pass that leaves the smaller intermediate goes first. Where the first pass overshoots
     0..255 (enlarged hard edges) the order matters, and Pillow's rule for it is its own: there
     results can differ from Pillow's by more than a level. Both passes' inner loops run over
     contiguous floats and vectorise. */
  const int row_lo = y.first[0], row_hi = y.first[out_h - 1] + y.count[out_h - 1];
  const int col_lo = x.first[0], col_hi = x.first[out_w - 1] + x.count[out_w - 1];
  if (flip) mirror(&x, out_w);
  const size_t horizontal_first = (size_t)(row_hi - row_lo) * out_w;
  const size_t vertical_first = (size_t)out_h * (col_hi - col_lo);
  const int widest = (out_w > col_hi - col_lo ? out_w : col_hi - col_lo) * channels;
  between = malloc(sizeof(float) * (horizontal_first < vertical_first ? horizontal_first
                                                                        : vertical_first)
                   * channels + 1);
  line = malloc(sizeof(float) * (size_t)widest);
  tile = malloc(sizeof(float) * (size_t)(col_hi - col_lo) * BLOCK * channels + 1);
  if (!between || !line || !tile) goto done;
  if (horizontal_first <= vertical_first) {
    horizontal_u8_to_f32(source, (size_t)width * channels, row_lo, row_hi, channels, &x,
                         col_lo, col_hi, out_w, tile, between);
    vertical_f32_to_u8(between, (size_t)out_w * channels, 0, row_lo, &y, out_h,
                       out_w * channels, line, out);
  } else {
    const int span = (col_hi - col_lo) * channels;
    vertical_u8_to_f32(source, (size_t)width * channels, (size_t)col_lo * channels, 0, &y,
                       out_h, span, line, between);
    /* `between` holds columns col_lo..col_hi from its first element. */
    horizontal_f32_to_u8(between - (size_t)col_lo * channels, (size_t)span, 0, out_h,
                         channels, &x, col_lo, col_hi, out_w, tile, out);
  }
  status = 0;
done:
  free_axis(&x);
  free_axis(&y);
  free(between);
  free(line);
  free(tile);
  return status;
}

int effcv_resize_bicubic(const uint8_t* source, int height, int width, int channels, double x0,
                         double y0, double x1, double y1, int out_h, int out_w, uint8_t* out) {
  return resize_bicubic(source, height, width, channels, x0, y0, x1, y1, out_h, out_w, 0, out);
}

/* ---- crop decoding ----------------------------------------------------------------------- */

int effcv_jpeg_crop_resize(const uint8_t* data, unsigned long size, int scale_num, double x0,
                           double y0, double x1, double y1, int out_h, int out_w, int flip,
                           uint8_t* out, char* message) {
  struct jpeg_decompress_struct cinfo;
  ErrorManager errors;
  uint8_t* volatile region = NULL;
  use_errors(&cinfo, &errors);
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(region);
    copy_message(message, errors.message);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (!converts_to_rgb(cinfo.jpeg_color_space)) {
    jpeg_destroy_decompress(&cinfo);
    return 2;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = scale_num;
  cinfo.scale_denom = 8;
  jpeg_start_decompress(&cinfo);
  const int width = (int)cinfo.output_width, height = (int)cinfo.output_height;
  /* The box in the scaled image, and the rows and columns its filter taps reach. */
  const double sx = (double)width / cinfo.image_width, sy = (double)height / cinfo.image_height;
  const double box_x0 = x0 * sx, box_x1 = x1 * sx, box_y0 = y0 * sy, box_y1 = y1 * sy;
  const double reach_x = 2.0 * fmax((box_x1 - box_x0) / out_w, 1.0) + 1.0;
  const double reach_y = 2.0 * fmax((box_y1 - box_y0) / out_h, 1.0) + 1.0;
  const int left = (int)fmax(0.0, floor(box_x0 - reach_x));
  const int right = (int)fmin((double)width, ceil(box_x1 + reach_x));
  const int top = (int)fmax(0.0, floor(box_y0 - reach_y));
  const int bottom = (int)fmin((double)height, ceil(box_y1 + reach_y));
  if (right <= left || bottom <= top) {
    jpeg_destroy_decompress(&cinfo);
    copy_message(message, "the box lies outside the image");
    return 1;
  }
  JDIMENSION crop_left = (JDIMENSION)left, crop_width = (JDIMENSION)(right - left);
  jpeg_crop_scanline(&cinfo, &crop_left, &crop_width); /* widened to whole iMCUs */
  const int shift = left - (int)crop_left;
  const int region_w = right - left, region_h = bottom - top;
  region = malloc((size_t)region_h * region_w * 3 + (size_t)crop_width * 3);
  if (!region) {
    jpeg_destroy_decompress(&cinfo);
    copy_message(message, "out of memory");
    return 1;
  }
  uint8_t* scanline = region + (size_t)region_h * region_w * 3;
  if (top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
  for (int y = 0; y < region_h; y++) {
    JSAMPROW line = scanline;
    jpeg_read_scanlines(&cinfo, &line, 1);
    memcpy(region + (size_t)y * region_w * 3, scanline + shift * 3, (size_t)region_w * 3);
  }
  const int ended_early = errors.ended_early;
  jpeg_abort_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (ended_early) {
    free(region);
    copy_message(message, errors.message);
    return 1;
  }
  const int status = resize_bicubic(region, region_h, region_w, 3, box_x0 - left,
                                    box_y0 - top, box_x1 - left, box_y1 - top, out_h, out_w,
                                    flip, out);
  free(region);
  if (status) copy_message(message, "out of memory");
  return status ? 1 : 0;
}
