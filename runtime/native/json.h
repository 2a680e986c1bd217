// A small JSON reader for the manifest (codegen/manifest.ts is its schema): a tree of values,
// parsed once when a runtime opens a manifest. Not a general-purpose library: numbers are doubles,
// strings are UTF-8 with the escapes JSON.stringify writes, and errors say where they are.
#ifndef PRT_JSON_H
#define PRT_JSON_H

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace prt {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;                   // Array
  std::vector<std::pair<std::string, Json>> fields;  // Object, in file order

  bool is(Kind k) const { return kind == k; }
  // The field `key` of an object, or nullptr.
  const Json* get(const std::string& key) const;
};

// Parse `text`; on failure returns false and sets `err` to "<what> at byte <offset>".
bool parse_json(const std::string& text, Json& out, std::string& err);

}  // namespace prt

#endif
