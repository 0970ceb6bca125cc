// The chart library of a build configured with -DPATHLINE_CHARTS=OFF: the same interface without
// cairo, for machines that lack cairo's development files (tools/gpu-check.sh builds so on a GPU
// machine without Debian's -dev packages). Callers ask available() and leave their charts out;
// a drawing function called anyway says why it cannot draw.
#include <stdexcept>

#include "pathline/plot/plot.hpp"

namespace pathline::plot {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void left_out(const fs::path& file) {
  throw std::logic_error(file.string() +
                         ": charts are left out of this build (configured with -DPATHLINE_CHARTS=OFF); "
                         "configure with -DPATHLINE_CHARTS=ON and cairo's development files to draw them");
}

}  // namespace

bool available() { return false; }

std::string scatter(const fs::path& file, const Points&, const Points&, const std::string&) {
  left_out(file);
}

std::string pathlines(const fs::path& file, const std::vector<Points>&, const Points&, const std::string&) {
  left_out(file);
}

std::string line_chart(const fs::path& file, const Axes&, const std::vector<Series>&) { left_out(file); }

std::string panel_chart(const fs::path& file, const Axes&, const std::vector<Panel>&, int) { left_out(file); }

std::string bar_chart(const fs::path& file, const Axes&, const std::vector<std::string>&,
                      const std::vector<double>&, const std::vector<double>&) {
  left_out(file);
}

std::string image_sheet(const fs::path& file, const ImageSheet&, int) { left_out(file); }

}  // namespace pathline::plot
