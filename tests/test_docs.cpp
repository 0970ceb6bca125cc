// The docs say what the code does: docs/pipeline.md's key tables of the engine tables are the specs
// (tools/gen-docs.sh writes them), and the slot table there lists the slots of PATHLINE_SLOTS.
#include "pathline/engine/config.hpp"
#include "pathline/engine/train.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

std::string pipeline_doc() {
  return testing::read_text(std::string(PATHLINE_SOURCE_DIR) + "/docs/pipeline.md");
}

TEST(Docs, EngineTableKeysMatchTheSpecs) {
  const std::string doc = pipeline_doc();
  for (const std::string& table : kEngineTables) {
    SCOPED_TRACE("[" + table + "]");
    const std::string begin =
        "<!-- keys of [" + table + "]: generated from the specs by tools/gen-docs.sh -->\n";
    const auto start = doc.find(begin);
    ASSERT_NE(start, std::string::npos) << "docs/pipeline.md lacks the line " << begin;
    const auto stop = doc.find("<!-- end of keys -->\n", start);
    ASSERT_NE(stop, std::string::npos);
    EXPECT_EQ(doc.substr(start + begin.size(), stop - start - begin.size()),
              settings_markdown(engine_table_specs(table)))
        << "docs/pipeline.md differs from the specs: run bash tools/gen-docs.sh";
  }
}

TEST(Docs, TheSlotTableListsEverySlotInPipelineOrder) {
  const std::string doc = pipeline_doc();
  std::size_t at = doc.find("## Slots");
  ASSERT_NE(at, std::string::npos);
  for (const SlotSpec& slot : pipeline_slots()) {
    const std::string row = slot.many ? "| `[[" + slot.table + "]]` | " : "| `[" + slot.table + "]` | ";
    const auto found = doc.find(row, at);
    ASSERT_NE(found, std::string::npos)
        << "docs/pipeline.md's slot table lacks " << row << " after the rows before it";
    at = found;
  }
}

TEST(Docs, ChoiceListsComeFromWhatImplementsThem) {
  auto choices = [](const std::string& key) {
    for (const ParamSpec& spec : engine_table_specs("train"))
      if (spec.name == key) return spec.choices;
    return std::vector<std::string>{};
  };
  std::vector<std::string> weightings = {"auto"};
  for (const auto& [name, weighting] : loss_weightings()) weightings.push_back(name);
  EXPECT_EQ(choices("loss_weighting"), weightings);
  std::vector<std::string> optimizers, schedules;
  for (const auto& [name, doc] : TrainSettings::optimizers()) optimizers.push_back(name);
  for (const auto& [name, doc] : TrainSettings::lr_schedules()) schedules.push_back(name);
  EXPECT_EQ(choices("optimizer"), optimizers);
  EXPECT_EQ(choices("lr_schedule"), schedules);
}

}  // namespace
}  // namespace pathline
