{
  "targets": [
    {
      "target_name": "sdlab_native",
      "sources": ["src/addon.cc", "src/gemm.cc", "src/conv.cc", "src/ops.cc", "src/pool.cc", "src/copy.cc", "src/attention.cc", "src/winograd.cc"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-function"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++1y", "-std=gnu++17"],
      "ldflags": ["-pthread"],
      "cflags": ["-pthread"]
    }
  ]
}
