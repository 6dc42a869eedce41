// An entry point of an emulated kernel file, as the registry build.rs generates lists
// them: its name, its launch bounds, and a call that unpacks a launch's arguments
// (`void** args`, one pointer per argument, as the CUDA driver takes them) into the
// entry's parameter types.
#pragma once

#include <stddef.h>
#include <string.h>

#include <utility>

extern "C" {
struct cn_emu_entry {
    const char* name;
    void (*fn)();
    // Calls fn with the arguments; compiled without the memory checks, which would
    // take the host's argument array for a kernel's access.
    void (*invoke)(void (*fn)(), void* const* args);
    size_t nargs;
    const size_t* arg_sizes;
    // The entry's __launch_bounds__ maximum, or 1024 without one.
    unsigned max_threads;
};
}

namespace cn_emu {

template <typename A> __attribute__((no_sanitize_address)) A arg(void* p) {
    A a;
    memcpy(static_cast<void*>(&a), p, sizeof(A));
    return a;
}

template <typename... A> struct Signature {
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};

    template <size_t... I>
    __attribute__((no_sanitize_address)) static void call(void (*f)(A...), void* const* args,
                                                          std::index_sequence<I...>) {
        f(arg<A>(args[I])...);
    }

    __attribute__((no_sanitize_address)) static void invoke(void (*fn)(), void* const* args) {
        call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
    }
};

template <typename... A> cn_emu_entry entry(const char* name, void (*f)(A...), unsigned max_threads) {
    return {name, reinterpret_cast<void (*)()>(f), &Signature<A...>::invoke, sizeof...(A), Signature<A...>::sizes,
            max_threads};
}

}  // namespace cn_emu
