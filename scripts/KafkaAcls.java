// Creates or lists ACL bindings of a secured broker for `scripts/kafka acl` (see its
// docstring). Run as a single-file program, which Java compiles in memory at launch:
//
//   java -cp 'target/kafka-jars/<version>/*' scripts/KafkaAcls.java CLIENT_PROPERTIES apply|list
//
// apply: reads rules from stdin, one a line (blank lines and lines starting with # ignored):
//            allow|deny <principal> <operation> <resource-type> <pattern-type> <resource-name>
//        checks every line before it applies any, creates them all in one CreateAcls call and
//        returns once DescribeAcls on the broker (which answers from its authorizer) lists
//        every one of them, so the next request the broker authorizes sees them.
// list:  prints every binding in that format, sorted; a host other than * is appended as
//        " host=<host>" (this tool only ever writes *).
//
// stdout carries only the list; errors are one line on stderr. Exit codes: 0 success,
// 1 failure (Kafka error, timeout), 2 usage or a malformed rule.

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcls {
    static final long PROPAGATION_TIMEOUT_MS = 30_000;
    static final String CLUSTER_NAME = "kafka-cluster";

    /** An error already phrased for the user, with the exit code it calls for. */
    static final class Failure extends Exception {
        final int exitCode;

        Failure(int exitCode, String message) {
            super(message);
            this.exitCode = exitCode;
        }
    }

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Failure e) {
            System.err.println("kafka: acl: " + e.getMessage());
            System.exit(e.exitCode);
        }
        System.exit(0); // the Admin client's threads are gone, but do not wait on anything else
    }

    static void run(String[] args) throws Failure {
        if (args.length != 2 || !(args[1].equals("apply") || args[1].equals("list"))) {
            throw new Failure(2, "usage: KafkaAcls.java CLIENT_PROPERTIES apply|list");
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        } catch (IOException e) {
            throw new Failure(1, "cannot read " + args[0] + ": " + e.getMessage());
        }
        props.putIfAbsent(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.putIfAbsent(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");

        if (args[1].equals("list")) {
            try (Admin admin = Admin.create(props)) {
                List<String> lines = describe(admin).stream().map(KafkaAcls::format).sorted()
                        .collect(Collectors.toList());
                lines.forEach(System.out::println);
                System.out.flush();
            }
            return;
        }
        Set<AclBinding> bindings = parse(readStdin());
        if (bindings.isEmpty()) {
            System.err.println("kafka: acl: no rules on stdin; nothing to do");
            return;
        }
        long started = System.nanoTime();
        try (Admin admin = Admin.create(props)) {
            try {
                admin.createAcls(bindings).all().get();
            } catch (ExecutionException e) {
                throw new Failure(1, "creating the ACL bindings failed: " + describeCause(e));
            } catch (InterruptedException e) {
                throw new Failure(1, "interrupted");
            }
            // The controller has committed them; the broker's authorizer applies them when it
            // replays the metadata log, a moment later. Wait until it lists them all.
            long deadline = System.currentTimeMillis() + PROPAGATION_TIMEOUT_MS;
            while (true) {
                Set<AclBinding> missing = new LinkedHashSet<>(bindings);
                missing.removeAll(describe(admin));
                if (missing.isEmpty()) {
                    break;
                }
                if (System.currentTimeMillis() >= deadline) {
                    throw new Failure(1, "the broker does not list " + missing.size() + " of the "
                            + bindings.size() + " created binding(s) after " + PROPAGATION_TIMEOUT_MS / 1000
                            + " s, e.g. " + format(missing.iterator().next()));
                }
                try {
                    Thread.sleep(100);
                } catch (InterruptedException e) {
                    throw new Failure(1, "interrupted");
                }
            }
        }
        System.err.printf(Locale.ROOT, "kafka: acl: created %d binding(s); the broker lists them (%.1f s)%n",
                bindings.size(), (System.nanoTime() - started) / 1e9);
    }

    static List<String> readStdin() throws Failure {
        try {
            BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            return reader.lines().collect(Collectors.toList());
        } catch (java.io.UncheckedIOException e) {
            throw new Failure(1, "cannot read stdin: " + e.getMessage());
        }
    }

    static Collection<AclBinding> describe(Admin admin) throws Failure {
        try {
            return admin.describeAcls(AclBindingFilter.ANY).values().get();
        } catch (ExecutionException e) {
            throw new Failure(1, "listing the ACL bindings failed: " + describeCause(e));
        } catch (InterruptedException e) {
            throw new Failure(1, "interrupted");
        }
    }

    static String describeCause(ExecutionException e) {
        Throwable cause = e.getCause() != null ? e.getCause() : e;
        return cause.getClass().getSimpleName() + ": " + cause.getMessage();
    }

    /** Every line checked before any is applied; the first malformed one fails them all. */
    static Set<AclBinding> parse(List<String> lines) throws Failure {
        Set<AclBinding> bindings = new LinkedHashSet<>();
        for (int i = 0; i < lines.size(); i++) {
            String line = lines.get(i).strip();
            if (line.isEmpty() || line.startsWith("#")) {
                continue;
            }
            try {
                bindings.add(parseRule(line));
            } catch (IllegalArgumentException e) {
                throw new Failure(2, "line " + (i + 1) + ": " + e.getMessage() + " (in: " + line + ")");
            }
        }
        return bindings;
    }

    static AclBinding parseRule(String line) {
        String[] f = line.split("\\s+");
        if (f.length != 6) {
            throw new IllegalArgumentException("expected 6 fields, allow|deny <principal> <operation> "
                    + "<resource-type> <pattern-type> <resource-name>, found " + f.length);
        }
        AclPermissionType permission;
        switch (f[0].toLowerCase(Locale.ROOT)) {
            case "allow": permission = AclPermissionType.ALLOW; break;
            case "deny": permission = AclPermissionType.DENY; break;
            default: throw new IllegalArgumentException("\"" + f[0] + "\" is neither allow nor deny");
        }
        String principal = f[1];
        int colon = principal.indexOf(':');
        if (colon <= 0 || colon == principal.length() - 1) {
            throw new IllegalArgumentException("principal \"" + principal + "\" is not of the form Type:name, "
                    + "e.g. User:shipping-api");
        }
        AclOperation operation = AclOperation.fromString(f[2]);
        if (operation == AclOperation.UNKNOWN || operation == AclOperation.ANY) {
            throw new IllegalArgumentException(unknown("operation", f[2], AclOperation.values(),
                    AclOperation.UNKNOWN, AclOperation.ANY));
        }
        ResourceType resourceType = ResourceType.fromString(f[3]);
        if (resourceType == ResourceType.UNKNOWN || resourceType == ResourceType.ANY) {
            throw new IllegalArgumentException(unknown("resource type", f[3], ResourceType.values(),
                    ResourceType.UNKNOWN, ResourceType.ANY));
        }
        PatternType patternType = PatternType.fromString(f[4]);
        if (patternType != PatternType.LITERAL && patternType != PatternType.PREFIXED) {
            throw new IllegalArgumentException("pattern type \"" + f[4] + "\" is not one of LITERAL, PREFIXED");
        }
        String name = f[5];
        if (resourceType == ResourceType.CLUSTER
                && !(patternType == PatternType.LITERAL && name.equals(CLUSTER_NAME))) {
            throw new IllegalArgumentException("a CLUSTER resource is LITERAL " + CLUSTER_NAME);
        }
        return new AclBinding(new ResourcePattern(resourceType, name, patternType),
                new AccessControlEntry(principal, "*", operation, permission));
    }

    @SafeVarargs
    static <E extends Enum<E>> String unknown(String what, String given, E[] values, E... excluded) {
        List<E> skip = Arrays.asList(excluded);
        List<String> names = new ArrayList<>();
        for (E value : values) {
            if (!skip.contains(value)) {
                names.add(value.name());
            }
        }
        return what + " \"" + given + "\" is not one of " + String.join(", ", names);
    }

    static String format(AclBinding binding) {
        AccessControlEntry entry = binding.entry();
        ResourcePattern pattern = binding.pattern();
        String line = String.join(" ",
                entry.permissionType().name().toLowerCase(Locale.ROOT),
                entry.principal(), entry.operation().name(), pattern.resourceType().name(),
                pattern.patternType().name(), pattern.name());
        return entry.host().equals("*") ? line : line + " host=" + entry.host();
    }
}
