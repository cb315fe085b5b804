// End-to-end check of the secured broker of `scripts/kafka start --security`, run by
// scripts/kafka-security-check (which starts the broker, grants the ACLs this expects and
// stops it again). Single-file program on the Kafka jars:
//
//   java -cp 'target/kafka-jars/<version>/*' scripts/KafkaSecurityCheck.java SECURITY_JSON
//
// Expects these ACLs (and no others that widen them):
//   allow User:shipping-api WRITE TOPIC PREFIXED shipping.
//   allow User:shipping-api WRITE TRANSACTIONAL_ID LITERAL shipping-outbox
//   allow User:identity-api READ TOPIC PREFIXED shipping.
//   allow User:identity-api READ GROUP PREFIXED identity-api-
//   deny User:identity-api READ GROUP LITERAL identity-api-blocked
// Prints one line a check ("ok ..." or "FAIL ...") and "N passed, N failed" last; exit 1 if
// any failed.

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class KafkaSecurityCheck {
    /** One way to connect: a listener and a SASL mechanism, or the SSL listener with a certificate. */
    record Login(String listener, String mechanism, String user, String certificate) {
        String describe() {
            return user + " over " + listener.toUpperCase() + " with "
                    + (mechanism != null ? mechanism : "client certificate " + certificate + ".pem");
        }
    }

    static final String[] SASL_LISTENERS = {"sasl_plaintext", "sasl_ssl"};
    static final String[] MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"};
    static final String RUN = UUID.randomUUID().toString().substring(0, 8);

    static JsonNode security;
    static int passed;
    static int failed;

    interface Step {
        String run() throws Exception;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: KafkaSecurityCheck.java SECURITY_JSON");
            System.exit(2);
        }
        security = new ObjectMapper().readTree(Files.readString(Path.of(args[0])));

        // The super user, every way in: create a topic, produce to it, read it back.
        for (Login login : allLogins("admin")) {
            String topic = "check." + (login.mechanism != null ? login.listener + "." + login.mechanism : "ssl")
                    .toLowerCase().replace('-', '_');
            expectOk("admin creates, produces to and consumes " + topic + " as " + login.describe(), () -> {
                createTopic(login, topic);
                String value = "hello " + RUN;
                produce(login, topic, null, value);
                consumeFind(login, topic, null, value);
                return "read back " + value;
            });
        }
        // Wrong passwords, on both SASL listeners and all three mechanisms.
        for (String listener : SASL_LISTENERS) {
            for (String mechanism : MECHANISMS) {
                Login login = new Login(listener, mechanism, "admin", null);
                expectRefused("admin with a wrong password over " + listener.toUpperCase() + " with " + mechanism,
                        AuthenticationException.class, () -> describeCluster(login, "wrong-" + RUN));
            }
        }
        // Untrusted and missing client certificates on the mTLS listener.
        expectRefused("the untrusted CA's CN=shipping-api certificate over SSL", AuthenticationException.class,
                () -> describeCluster(new Login("ssl", null, "shipping-api", "untrusted-shipping-api"), null));
        expectRefused("no client certificate over SSL", AuthenticationException.class,
                () -> describeCluster(new Login("ssl", null, "nobody", null), null));

        Login admin = new Login("sasl_plaintext", "PLAIN", "admin", null);
        createTopic(admin, "shipping.x");
        createTopic(admin, "identity.x");

        // shipping-api: WRITE on shipping.* (every way in maps to User:shipping-api), nothing else.
        for (Login login : allLogins("shipping-api")) {
            expectOk("shipping-api produces to shipping.x as " + login.describe(),
                    () -> produce(login, "shipping.x", null, "from shipping-api " + RUN));
            expectRefused("shipping-api produces to identity.x as " + login.describe(), AuthorizationException.class,
                    () -> produce(login, "identity.x", null, "must not land"));
        }
        Login shipping = new Login("sasl_ssl", "SCRAM-SHA-512", "shipping-api", null);
        expectOk("shipping-api produces to shipping.x in a transaction with transactional id shipping-outbox",
                () -> produce(shipping, "shipping.x", "shipping-outbox", "transactional " + RUN));
        expectRefused("shipping-api uses transactional id other-outbox", AuthorizationException.class,
                () -> produce(shipping, "shipping.x", "other-outbox", "must not land"));
        expectRefused("shipping-api creates topic shipping.new", AuthorizationException.class,
                () -> createTopic(shipping, "shipping.new"));
        expectRefused("shipping-api consumes shipping.x in group shipping-api-1", AuthorizationException.class,
                () -> consumeFind(shipping, "shipping.x", "shipping-api-1", "from shipping-api " + RUN));

        // identity-api: READ on shipping.* in groups identity-api-*, except the denied one.
        Login identity = new Login("sasl_plaintext", "SCRAM-SHA-256", "identity-api", null);
        Login identityCert = new Login("ssl", null, "identity-api", "identity-api");
        expectOk("identity-api consumes shipping.x in group identity-api-" + RUN + " as " + identity.describe(),
                () -> consumeFind(identity, "shipping.x", "identity-api-" + RUN, "from shipping-api " + RUN));
        expectOk("identity-api consumes shipping.x in group identity-api-c" + RUN + " as " + identityCert.describe(),
                () -> consumeFind(identityCert, "shipping.x", "identity-api-c" + RUN, "from shipping-api " + RUN));
        expectRefused("identity-api consumes shipping.x in group other-group", AuthorizationException.class,
                () -> consumeFind(identity, "shipping.x", "other-group", "from shipping-api " + RUN));
        expectRefused("identity-api consumes shipping.x in the denied group identity-api-blocked",
                AuthorizationException.class,
                () -> consumeFind(identity, "shipping.x", "identity-api-blocked", "from shipping-api " + RUN));
        expectRefused("identity-api produces to shipping.x", AuthorizationException.class,
                () -> produce(identity, "shipping.x", null, "must not land"));

        // outsider: authenticated, allowed nothing.
        for (Login outsider : List.of(new Login("sasl_ssl", "PLAIN", "outsider", null),
                new Login("ssl", null, "outsider", "outsider"))) {
            expectRefused("outsider creates a topic as " + outsider.describe(), AuthorizationException.class,
                    () -> createTopic(outsider, "outsider." + RUN));
            expectRefused("outsider produces to shipping.x as " + outsider.describe(), AuthorizationException.class,
                    () -> produce(outsider, "shipping.x", null, "must not land"));
            expectRefused("outsider consumes shipping.x as " + outsider.describe(), AuthorizationException.class,
                    () -> consumeFind(outsider, "shipping.x", "outsider-group", "from shipping-api " + RUN));
        }

        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }

    static List<Login> allLogins(String user) {
        List<Login> logins = new ArrayList<>();
        for (String listener : SASL_LISTENERS) {
            for (String mechanism : MECHANISMS) {
                logins.add(new Login(listener, mechanism, user, null));
            }
        }
        logins.add(new Login("ssl", null, user, user));
        return logins;
    }

    // ------------------------------------------------------------------ outcomes

    static void expectOk(String what, Step step) {
        try {
            report(true, what, step.run());
        } catch (Exception e) {
            report(false, what, "unexpected " + describe(e));
        }
    }

    static void expectRefused(String what, Class<? extends Exception> refusal, Step step) {
        try {
            report(false, what, "was allowed: " + step.run());
        } catch (Exception e) {
            Throwable cause = rootKafkaCause(e, refusal);
            if (cause != null) {
                report(true, what, "refused: " + cause.getClass().getSimpleName());
            } else {
                report(false, what, "expected a " + refusal.getSimpleName() + ", got " + describe(e));
            }
        }
    }

    static Throwable rootKafkaCause(Throwable e, Class<? extends Exception> wanted) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (wanted.isInstance(t)) {
                return t;
            }
        }
        return null;
    }

    static String describe(Throwable e) {
        Throwable t = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
        return t.getClass().getSimpleName() + ": " + t.getMessage();
    }

    static void report(boolean ok, String what, String detail) {
        if (ok) {
            passed++;
        } else {
            failed++;
        }
        System.out.println((ok ? "ok   " : "FAIL ") + what + " (" + detail + ")");
        System.out.flush();
    }

    // ------------------------------------------------------------------ clients

    static Properties config(Login login, String password) {
        Properties p = new Properties();
        p.put("bootstrap.servers", security.get("listeners").get(login.listener).asText());
        p.put("security.protocol", login.listener.toUpperCase());
        p.put("request.timeout.ms", "10000");
        p.put("default.api.timeout.ms", "15000");
        if (!login.listener.equals("sasl_plaintext")) {
            p.put("ssl.truststore.type", "PEM");
            p.put("ssl.truststore.location", security.get("ca").asText());
        }
        if (login.mechanism != null) {
            String module = login.mechanism.equals("PLAIN")
                    ? "org.apache.kafka.common.security.plain.PlainLoginModule"
                    : "org.apache.kafka.common.security.scram.ScramLoginModule";
            String secret = password != null ? password : security.get("users").get(login.user).asText();
            p.put("sasl.mechanism", login.mechanism);
            p.put("sasl.jaas.config", module + " required username=\"" + login.user + "\" password=\"" + secret + "\";");
        } else if (login.certificate != null) {
            JsonNode files = security.get("client_certificates").get(login.certificate);
            try {
                p.put("ssl.keystore.type", "PEM");
                p.put("ssl.keystore.certificate.chain", Files.readString(Path.of(files.get("certificate").asText())));
                p.put("ssl.keystore.key", Files.readString(Path.of(files.get("key").asText())));
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
        return p;
    }

    static String describeCluster(Login login, String password) throws Exception {
        try (Admin admin = Admin.create(config(login, password))) {
            return "cluster " + admin.describeCluster().clusterId().get();
        }
    }

    static String createTopic(Login login, String topic) throws Exception {
        try (Admin admin = Admin.create(config(login, null))) {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
            return "created " + topic;
        } catch (ExecutionException e) {
            if (e.getCause() instanceof TopicExistsException) {
                return topic + " exists";
            }
            throw e;
        }
    }

    static String produce(Login login, String topic, String transactionalId, String value) throws Exception {
        Properties p = config(login, null);
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.put("max.block.ms", "15000");
        p.put("delivery.timeout.ms", "20000");
        p.put("acks", "all");
        if (transactionalId != null) {
            p.put("transactional.id", transactionalId);
        }
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            if (transactionalId != null) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            var metadata = producer.send(new ProducerRecord<>(topic, "key", value)).get();
            if (transactionalId != null) {
                producer.commitTransaction();
            }
            return "offset " + metadata.offset();
        }
    }

    /** Read `topic` from the start (in `group`, or assigned without one) until `value` shows up. */
    static String consumeFind(Login login, String topic, String group, String value) throws Exception {
        Properties p = config(login, null);
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.put("auto.offset.reset", "earliest");
        p.put("enable.auto.commit", "false");
        if (group != null) {
            p.put("group.id", group);
        }
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            if (group != null) {
                consumer.subscribe(List.of(topic));
            } else {
                TopicPartition partition = new TopicPartition(topic, 0);
                consumer.assign(List.of(partition));
                consumer.seekToBeginning(List.of(partition));
            }
            long deadline = System.currentTimeMillis() + 20_000;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(500))) {
                    if (value.equals(record.value())) {
                        return "found at offset " + record.offset();
                    }
                }
            }
            throw new IllegalStateException("\"" + value + "\" not read from " + topic + " within 20 s");
        }
    }
}
