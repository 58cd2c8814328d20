"""The payments service: a second application beside the shop (issue 14).

It has its own aggregate (:class:`~sample_app.payments.domain.OrderPayment`), events topic
(``payments.events`` on Kafka), command handlers, read models (``projections.payments``) and a
process manager (:class:`~sample_app.payments.process.PaymentProcess`). It reads the shop's
events topic as a consumer only, and changes the shop only by sending the shop's commands
through the shop's command path.
"""
